//! The `riskhost` binary: reads secret files and the configuration file into
//! the environment, parses the command line and runs a subcommand.

use clap::{CommandFactory, FromArgMatches};

/// See `allocator.rs` of the library for why, and what the compile worker
/// is told about it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let from_secret_files = match riskhost::apply_secret_files(&riskhost::Cli::command()) {
        Ok(variables) => variables,
        Err(error) => {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let config_file = match riskhost::apply_config_file(&args) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // After both: clap reads the environment when a command is built.
    let mut command = riskhost::Cli::command();
    let matches = command.get_matches_mut();
    if let Some(("config", sub)) = matches.subcommand() {
        if let Some(config) = command.find_subcommand("config") {
            riskhost::print_effective(config, sub, config_file.as_ref(), &from_secret_files);
        }
        return std::process::ExitCode::SUCCESS;
    }
    let cli = match riskhost::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    match riskhost::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // 1, or 3 and 4 for a run waited for that ended with failures
            // or cancelled.
            std::process::ExitCode::from(riskhost::exit_code(&error))
        }
    }
}
