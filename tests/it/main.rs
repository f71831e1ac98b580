//! The one integration-test binary: parity with the Python reference, training, the service.

mod app;
mod common;
mod detect;
mod parity;
mod seqeval;
mod service;
