//! Weir HTTP server (actix-web): live page, websocket, Prometheus metrics and the admin API.
