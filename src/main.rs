//! `agd`: parses the command line and dispatches; everything else lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match agd::cli::run(agd::cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = agd::cli::message(&err);
            agd::logging::record_failure(&message);
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
