//! The `qlift` binary: [`qlift::cli`] does the work; this installs the panic hook that
//! reports a panic as an internal error (the command then exits with 2).

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "error: internal error: {info}");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            let _ = writeln!(err, "{backtrace}");
        }
        let _ = writeln!(err, "{}", qlift::cli::BUG_REPORT);
    }));
    ExitCode::from(qlift::cli::main_with(std::env::args_os()))
}
