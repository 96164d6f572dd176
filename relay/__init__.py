"""relay: an IPTV relay for Plex: an HDHomeRun tuner in front, Xtream/M3U providers behind."""

__version__ = "0.1.0"
