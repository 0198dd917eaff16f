//! The `tether` binary: parse the command line, run it. The command tree is
//! [`tether::cli`]; the work is in the library.
use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    let cli = tether::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match cli.single_threaded() {
        true => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        false => tokio::runtime::Runtime::new()?,
    };
    rt.block_on(tether::cli::run(cli))
}
