//! Job lifecycle: spec parsing, resolution, status machine, the worker, cancellation.

pub mod resolve;
pub mod spec;
pub mod worker;
