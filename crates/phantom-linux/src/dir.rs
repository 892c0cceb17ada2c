//! Reading a directory by its fd (the stores and the image unpacker walk trees relative
//! to directory fds, never by path).

use std::ffi::CString;
use std::os::fd::BorrowedFd;

use rustix::fs::{Dir, FileType};
use rustix::io::Errno;

/// The entries of a directory (without `.` and `..`), with their types as readdir
/// reports them (possibly `Unknown`).
pub fn list(dir: BorrowedFd<'_>) -> Result<Vec<(CString, FileType)>, Errno> {
    let mut reader = Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        names.push((name.to_owned(), entry.file_type()));
    }
    Ok(names)
}
