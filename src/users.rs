//! Operating-system users and groups by name or number, through the C library's
//! reentrant look-ups (so NSS sources such as LDAP work as they do for PostgreSQL).

use std::ffi::{CStr, CString};

/// A user account: what a process needs to run as it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// The user id of `name`, if it exists.
pub fn uid_of(name: &str) -> Option<u32> {
    user_by_name(name).map(|u| u.uid)
}

/// The group id of `name`, if it exists.
pub fn gid_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok().filter(|_| !name.is_empty())?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `group` is a plain C record; all-zero is a valid value.
    let mut record: libc::group = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, which writes only into `record`, `buf`
    // and `result`.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut record,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(record.gr_gid)
}

/// The account called `name`.
pub fn user_by_name(name: &str) -> Option<User> {
    let c = CString::new(name).ok().filter(|_| !name.is_empty())?;
    lookup_user(|record, buf, result| {
        // SAFETY: every pointer is valid for the call, which writes only into `record`,
        // `buf` and `result`.
        unsafe { libc::getpwnam_r(c.as_ptr(), record, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// The account with user id `uid`.
pub fn user_by_uid(uid: u32) -> Option<User> {
    lookup_user(|record, buf, result| {
        // SAFETY: as above.
        unsafe { libc::getpwuid_r(uid, record, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn lookup_user(
    call: impl FnOnce(&mut libc::passwd, &mut Vec<libc::c_char>, &mut *mut libc::passwd) -> libc::c_int,
) -> Option<User> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `passwd` is a plain C record; all-zero is a valid value.
    let mut record: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    let rc = call(&mut record, &mut buf, &mut result);
    if rc != 0 || result.is_null() {
        return None;
    }
    let text = |p: *const libc::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: the C library filled `p` with a NUL-terminated string inside `buf`,
            // which is still alive.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    Some(User {
        name: text(record.pw_name),
        uid: record.pw_uid,
        gid: record.pw_gid,
        home: text(record.pw_dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_both_ways() {
        let root = user_by_name("root").unwrap();
        assert_eq!(root.uid, 0);
        assert_eq!(user_by_uid(0).unwrap().name, "root");
        assert_eq!(gid_of("root"), Some(0));
        assert_eq!(uid_of(""), None);
        assert_eq!(uid_of("no-such-user-wale"), None);
    }
}
