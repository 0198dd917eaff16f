//! Load generator: drives real agents and sessions against running relays.
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum LoadCmd {}

pub async fn run(cmd: LoadCmd) -> Result<()> {
    match cmd {}
}
