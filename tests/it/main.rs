//! The one integration-test binary: parity with the Python reference, training, the service.

mod common;
mod parity;
mod seqeval;
mod app;
mod service;
mod detect;
