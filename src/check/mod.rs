//! Self-checks that run from a built binary (`lstmd-check`), for machines
//! with no Rust toolchain, such as a GPU host: the PyTorch golden fixtures on
//! a device, and a served model's predictions compared across devices.
pub mod golden;
pub mod service;
