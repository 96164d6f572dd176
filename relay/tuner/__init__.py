"""What Plex sees: the HDHomeRun HTTP API documents and UDP/SSDP discovery."""
