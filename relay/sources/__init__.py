"""Provider edges: Xtream player_api, M3U, XMLTV guides, and the account sync."""
