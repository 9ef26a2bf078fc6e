//! MWS, mini-MAR's Managed WebSocket push gateway (Qt Cloud Services' MWS, wire-compatible):
//! clients hold WebSockets to a gateway, and servers push messages to all of them, to chosen
//! sockets, or to the sockets tagged with a user id or a room.
//!
//! This crate is being built in steps (issue 12). Here so far are its core, the [`hub`]: one
//! gateway's live state as plain data behind one lock, with no I/O: socket reservations and
//! their single-use tokens, the sockets connected and an index of them by tag, routing a
//! message once to the queues of the sockets it reaches (bounded, so a slow consumer is cut
//! rather than buffered without end), and the numbered history a reconnecting client
//! recovers what it missed from; and the [`session`] of one client's WebSocket (delivery in
//! order, pings, the Close that says why it ended, small explicit buffers). The REST API, the
//! WebSocket endpoint's routing and the service instances come next, around them.
//!
//! Boundary: knows nothing of apps, builds, the router or storage engines.

pub mod api;
pub mod hub;
pub mod session;

pub use api::{Access, Gateway, Gateways, MwsHandler};
pub use hub::{
    Closed, ConnectError, Connected, Delivery, Hub, HubOptions, Published, Receivers, Recovery,
    Reservation, SocketInfo,
};
pub use session::{Ended, SessionOptions};
