//! MWS, mini-MAR's Managed WebSocket push gateway (Qt Cloud Services' MWS, wire-compatible):
//! clients hold WebSockets to a gateway, and servers push messages to all of them, to chosen
//! sockets, or to the sockets tagged with a user id or a room.
//!
//! - [`hub`]: one gateway's live state as plain data behind one lock, with no I/O: socket
//!   reservations and their single-use tokens, the sockets connected and an index of them by
//!   tag, routing a message once to the queues of the sockets it reaches (bounded, so a slow
//!   consumer is cut rather than buffered without end), and the numbered history a
//!   reconnecting client recovers what it missed from;
//! - [`session`]: one client's WebSocket (delivery in order, pings, the Close that says why it
//!   ended, small explicit buffers);
//! - [`api`]: the REST API and the WebSocket endpoint behind a `mar_http::Handler`, the
//!   registry of gateways with their own executor, and the per-address socket limit;
//! - [`forward`]: clients' frames posted to the attached app, when a gateway asks for it;
//! - [`identity`]: the `eds` access mode's users, checked by the composition root.
//!
//! Boundary: knows nothing of apps, builds, the router or storage engines; the composition
//! root keeps gateways' configurations and says where an attached app is.

pub mod api;
pub mod forward;
pub mod hub;
pub mod identity;
pub mod session;

pub use api::{Access, Gateway, GatewayConfig, Gateways, MwsHandler};
pub use forward::{Forward, Target};
pub use hub::{
    Closed, ConnectError, Connected, Delivery, Hub, HubOptions, Published, Receivers, Recovery,
    Refused, Reservation, SocketInfo,
};
pub use identity::{Denied, Identity, Verifier};
pub use session::{Ended, MAX_PER_ADDRESS, SessionOptions};
