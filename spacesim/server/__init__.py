"""The reference room server: HTTP API, WebSocket events, media plane, store and auth."""
