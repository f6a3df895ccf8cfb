//! `agd`: parses the command line and dispatches; everything else lives in the library.

fn main() -> std::process::ExitCode {
    agd::cli::exit_code(agd::cli::run(agd::cli::parse()))
}
