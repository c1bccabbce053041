//! The `scimgate` binary: parse the command line and hand over to the library.

/// mimalloc: the request path allocates many small, short-lived buffers across two or more
/// threads; the load benchmark measured glibc malloc at about a tenth of the CPU per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scimgate::cli::main()
}
