//! Which browser origins may call: CORS for the API, and the same list for WebSocket and SSE.
