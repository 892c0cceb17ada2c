//! `libphantom_zygote.so`: what a zygote's interpreter (phantom-engine's zygote.py)
//! loads with ctypes to serve runs. One entry point, [`phantom_zygote_serve`]; the
//! work is phantom-engine's `fork::serve`, so that a forked run gets exactly the
//! fences of a cold one, from the same code.
//!
//! The only unsafe-adjacent item is the unmangled symbol itself: a C ABI function with
//! no pointer arguments but CPython's fork hooks, which are called as plain
//! `extern "C" fn()`.

use phantom_engine::fork::{serve, PythonHooks};

/// Serve runs (see `phantom_engine::fork::serve`): returns in the zygote when it
/// stops (negative), and in a run's payload with the fd of its request (3).
/// `before`, `after_parent`, `after_child`: CPython's `PyOS_BeforeFork`,
/// `PyOS_AfterFork_Parent`, `PyOS_AfterFork_Child`. Called with the GIL held
/// (ctypes.PyDLL).
#[no_mangle]
pub extern "C" fn phantom_zygote_serve(
    before: Option<extern "C" fn()>,
    after_parent: Option<extern "C" fn()>,
    after_child: Option<extern "C" fn()>,
) -> i32 {
    let hooks = PythonHooks {
        before,
        after_parent,
        after_child,
    };
    // A panic must not unwind into the interpreter.
    std::panic::catch_unwind(|| serve(hooks)).unwrap_or(phantom_engine::fork::SERVE_FAILED)
}
