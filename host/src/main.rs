//! The `riskhost` binary: parses the command line and runs a subcommand.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = riskhost::config::Cli::parse();
    match riskhost::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
