//! Throughput of one tunnelled connection through a real relay and agent over
//! loopback TLS, against direct loopback TCP to the same service, in one run.
//!
//! Everything (relay, agent, client, services) shares this process's runtime
//! and the machine's cores, as on a single test host.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tether::client::ClientSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

#[path = "common/mod.rs"]
mod common;
use common::{SIZE, push};

/// Serves the sink on every accepted connection.
async fn sink(l: TcpListener) {
    while let Ok((s, _)) = l.accept().await {
        tokio::spawn(common::sink_conn(s));
    }
}

/// Writes SIZE bytes on every connection, then closes.
async fn source(l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else { return };
        tokio::spawn(async move {
            let buf = vec![0x42u8; 256 * 1024];
            for _ in 0..SIZE / buf.len() {
                if s.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
    }
}

struct Setup {
    rt: Runtime,
    sink: SocketAddr,
    source: SocketAddr,
    to_sink: Arc<ClientSession>,
    from_source: Arc<ClientSession>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (sink_addr, source_addr, to_sink, from_source) = rt.block_on(async {
        let pki = d.join("pki");
        tether::tls::pki::init_dir(&pki, &["bench-1"]).unwrap();
        let sink_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let source_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (sink_addr, source_addr) = (sink_l.local_addr().unwrap(), source_l.local_addr().unwrap());
        tokio::spawn(sink(sink_l));
        tokio::spawn(source(source_l));
        let stop = CancellationToken::new();
        let relay = common::start_relay(&pki, &d, stop.clone()).await;
        common::start_agent(&d, "bench-1", &relay, &[("sink", sink_addr), ("source", source_addr)], stop).await;
        let profile = common::profile(&pki, relay.client);
        let to_sink = common::open_session(&profile, "bench-1", "sink").await;
        let from_source = common::open_session(&profile, "bench-1", "source").await;
        (sink_addr, source_addr, to_sink, from_source)
    });
    Setup { rt, sink: sink_addr, source: source_addr, to_sink, from_source, _dir: dir }
}

async fn pull<S: tokio::io::AsyncRead + Unpin>(mut s: S) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0;
    loop {
        let k = s.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(n, SIZE);
}

fn splice(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("one_connection");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let timed = |rt: &Runtime, iters: u64, f: &dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                f().await;
            }
            start.elapsed()
        })
    };
    g.bench_function("direct_tcp/to_service", |b| {
        b.iter_custom(|n| {
            timed(&s.rt, n, &|| Box::pin(async { push(TcpStream::connect(s.sink).await.unwrap()).await }))
        })
    });
    g.bench_function("tether/to_device", |b| {
        b.iter_custom(|n| timed(&s.rt, n, &|| Box::pin(async { push(s.to_sink.connect().await.unwrap()).await })))
    });
    g.bench_function("direct_tcp/from_service", |b| {
        b.iter_custom(|n| {
            timed(&s.rt, n, &|| Box::pin(async { pull(TcpStream::connect(s.source).await.unwrap()).await }))
        })
    });
    g.bench_function("tether/from_device", |b| {
        b.iter_custom(|n| timed(&s.rt, n, &|| Box::pin(async { pull(s.from_source.connect().await.unwrap()).await })))
    });
    g.finish();
}

criterion_group!(benches, splice);
criterion_main!(benches);
