//! The `tether` binary: parse the command line, run it. The command tree is
//! [`tether::cli`]; the work is in the library.
use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    tune_malloc();
    let cli = tether::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,quinn_udp=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match cli.single_threaded() {
        true => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        false => tokio::runtime::Runtime::new()?,
    };
    rt.block_on(tether::cli::run(cli))
}

/// glibc gives the top of its heap back to the kernel as soon as 128 KiB
/// there are free, and takes it again at the next allocation: a tunnel's
/// receive blocks (up to 64 KiB each, freed as they are consumed) made it
/// do that all the time, and page faults took a fifth of the agent's CPU in
/// a bulk transfer. Keeping up to 32 MiB free (and growing 4 MiB at a time)
/// measured +35 % upload and +20 % download through one tunnel over TCP
/// (iperf3 through `tether dev`, 2026-12-01); memory in use is unchanged.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; it is called first
    // thing in main, before any thread exists, with documented parameters.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TOP_PAD, 4 << 20);
        // Setting those stops glibc from raising its mmap threshold as it
        // sees large blocks freed, which alone kept QUIC's buffers off mmap:
        // set it ourselves (without it, QUIC uploads fell from 138 to 14 MiB/s).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
