//! PostgreSQL itself, as wale meets it when it turns a restored backup into a server:
//! what differs between major versions ([`version`]), control data ([`control`]),
//! configuration files ([`conf`]), a restored data directory ([`datadir`]), and the server
//! binaries and running server ([`server`]).

pub mod conf;
pub mod control;
pub mod datadir;
pub mod server;
pub mod version;
