//! Gateway API routes for the waypoint (being written).
