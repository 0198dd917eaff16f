//! End-to-end tests: real `tether` processes, real TLS, loopback only.
mod harness;

mod bad_frames;
mod bad_tls;
mod consent;
mod dev;
mod disconnect;
mod e2e_tls;
mod failover;
mod fetch;
mod flood;
mod grants;
mod handshake;
mod haproxy;
mod holes;
mod hub;
mod hub_abuse;
mod hub_refusals;
mod inputs;
mod jobs;
mod legs;
mod memory;
mod no_listen;
mod repo;
mod tunnel;
mod twins;
mod twins_basic;
