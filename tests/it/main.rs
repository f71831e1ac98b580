//! The one integration-test binary: parity with the Python reference, training, the service.

mod annotate;
mod annotation_loop;
mod app;
mod common;
mod crash;
mod detect;
mod failing;
mod families;
mod hardening;
mod hub;
mod parity;
mod precision;
mod scale;
mod seqeval;
mod service;
mod studies;
mod sweep;
mod ui;
