//! The `tether` binary: parse the command line, run it. The command tree is
//! [`tether::cli`]; the work is in the library.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tune_malloc();
    let cli = tether::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,quinn_udp=error".into()),
        )
        .with_writer(std::io::stderr)
        // A line that cannot be written (the log's reader is gone) is
        // dropped. Reporting it used `eprintln!`, which panicked on the same
        // closed pipe and took the logging task with it: a relay left behind
        // by its supervisor so ignored SIGTERM.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match cli.threads() {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        None => tokio::runtime::Runtime::new(),
    };
    let done = match rt {
        Ok(rt) => rt.block_on(tether::cli::run(cli)),
        Err(e) => Err(e.into()),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", failure(&e));
            ExitCode::FAILURE
        }
    }
}

/// What a command that failed prints: the error and its causes, as
/// anyhow's `Debug` would, but never a stack backtrace. A refusal ("the
/// service is not in the device's allow-list") is the user's answer, not a
/// crash, and `RUST_BACKTRACE=1`, common in a developer's shell, made anyhow
/// print 15 frames of tether's internals under it. Panics keep theirs.
fn failure(e: &anyhow::Error) -> String {
    let mut out = format!("Error: {e}");
    // A cause that its error already quotes ("cannot read config X: No such
    // file") is not said twice.
    let said: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let causes: Vec<&String> =
        said.iter().skip(1).zip(&said).filter(|(c, above)| !above.contains(c.as_str())).map(|(c, _)| c).collect();
    if !causes.is_empty() {
        out.push_str("\n\nCaused by:");
        for c in causes {
            out.push_str(&format!("\n    {c}"));
        }
    }
    out
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
