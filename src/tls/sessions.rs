//! TLS session caches that forget everything when the CRL changes.
//!
//! A resumed TLS session does not run the certificate verifier again: without
//! this, a device (or relay) revoked while it held a session could come back
//! by resuming it. Both sides' caches are emptied at each CRL reload of their
//! [`Trust`], so every handshake after a revocation is a full one, checked
//! against the new list.
use std::sync::{Arc, Mutex};

use rustls::NamedGroup;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};

use super::Trust;

const SIZE: usize = 256;

/// A server's session store, emptied when `trust`'s CRL changes.
#[derive(Debug)]
pub struct ServerSessions {
    trust: Arc<Trust>,
    cache: Mutex<(u64, Arc<ServerSessionMemoryCache>)>,
}

impl ServerSessions {
    pub fn new(trust: Arc<Trust>) -> Arc<ServerSessions> {
        let generation = trust.generation();
        Arc::new(ServerSessions { trust, cache: Mutex::new((generation, ServerSessionMemoryCache::new(SIZE))) })
    }

    fn current(&self) -> Arc<ServerSessionMemoryCache> {
        let generation = self.trust.generation();
        let mut c = crate::util::lock(&self.cache);
        if c.0 != generation {
            *c = (generation, ServerSessionMemoryCache::new(SIZE));
        }
        c.1.clone()
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.current().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// A client's session store, emptied when `trust`'s CRL changes.
#[derive(Debug)]
pub struct ClientSessions {
    trust: Arc<Trust>,
    cache: Mutex<(u64, Arc<ClientSessionMemoryCache>)>,
}

impl ClientSessions {
    pub fn new(trust: Arc<Trust>) -> Arc<ClientSessions> {
        let generation = trust.generation();
        Arc::new(ClientSessions {
            trust,
            cache: Mutex::new((generation, Arc::new(ClientSessionMemoryCache::new(SIZE)))),
        })
    }

    fn current(&self) -> Arc<ClientSessionMemoryCache> {
        let generation = self.trust.generation();
        let mut c = crate::util::lock(&self.cache);
        if c.0 != generation {
            *c = (generation, Arc::new(ClientSessionMemoryCache::new(SIZE)));
        }
        c.1.clone()
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.current().set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.current().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.current().set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.current().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.current().remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.current().insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.current().take_tls13_ticket(server_name)
    }
}
