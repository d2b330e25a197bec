//! Port choice: the server's usual port when it is free on 127.0.0.1, otherwise one the kernel hands out.

use std::net::{Ipv4Addr, TcpListener};

/// Whether nothing listens on `127.0.0.1:port` (we can bind it right now).
pub(crate) fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// `preferred` if it is free and not in `avoid`, otherwise a free ephemeral port not in `avoid`.
///
/// The port is free at the time of the call; a server started on it right after can still lose a race,
/// so callers check that the server they started answers (and retry with a new port).
pub(crate) fn choose(preferred: u16, avoid: &[u16]) -> std::io::Result<u16> {
    if preferred != 0 && !avoid.contains(&preferred) && is_free(preferred) {
        return Ok(preferred);
    }
    for _ in 0..20 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if !avoid.contains(&port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free port found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_preferred_port_is_kept() {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Released at the end of the statement above; nobody else should take it this quickly.
        assert_eq!(choose(port, &[]).unwrap(), port);
    }

    #[test]
    fn taken_port_is_replaced_by_a_free_one() {
        let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = holder.local_addr().unwrap().port();
        assert!(!is_free(taken));
        let got = choose(taken, &[]).unwrap();
        assert_ne!(got, taken);
        assert!(is_free(got));
    }

    #[test]
    fn avoided_ports_are_not_returned() {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let got = choose(port, &[port]).unwrap();
        assert_ne!(got, port);
    }

    #[test]
    fn zero_means_any() {
        assert_ne!(choose(0, &[]).unwrap(), 0);
    }
}
