//! Integration tests: the relay against real WebSocket servers on 127.0.0.1:0, a real on-disk
//! journal, and the binary itself where a process boundary matters (signals, kill -9, exit codes).

mod admin;
mod attack;
mod auth;
mod catch_up;
mod chaos;
mod check;
mod command_loop;
mod config;
mod crash;
mod delivery;
mod enrich;
mod hardening;
mod http;
mod journal;
mod journal_health;
mod listeners;
mod malformed;
mod measure;
mod nats;
mod ops;
mod pause;
mod pki;
mod properties;
mod receiver;
mod reconnect;
mod rest;
mod shutdown;
mod signals;
mod sim_rest;
mod simulator;
mod soak;
mod support;
mod tls;
mod webhooks;
