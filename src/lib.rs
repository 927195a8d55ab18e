pub mod connection;
pub mod error;
pub mod pki;
pub mod protocol;
pub mod tls;
pub mod store;
pub mod walk;
