//! `agd`: parses the command line and dispatches; everything else lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match agd::cli::run(agd::cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", agd::cli::message(&err));
            ExitCode::FAILURE
        }
    }
}
