//! PostgreSQL itself, as wale meets it when it turns a restored backup into a server:
//! control data ([`control`]), configuration files ([`conf`]) and the server binaries and
//! running server ([`server`]).

pub mod conf;
pub mod control;
pub mod server;
