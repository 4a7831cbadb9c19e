//! Admission: the decision, before any handshake work, whether a new connection is served.
//!
//! Sans-IO: the accept loop passes in what it knows and acts on the answer (refusing costs one
//! packet; the TLS handshake is never started). Must never: do I/O or wait; it runs inline in the
//! accept loop so its counts cannot overshoot.

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Accept,
    /// Refuse before the handshake; the label names the reason in metrics.
    Refuse(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct AdmissionPolicy {
    /// Connections held at once (`limits.max_connections`).
    pub max_connections: usize,
}

impl AdmissionPolicy {
    pub fn decide(&self, open_connections: usize, draining: bool) -> Admit {
        if draining {
            Admit::Refuse("draining")
        } else if open_connections >= self.max_connections {
            Admit::Refuse("max_connections")
        } else {
            Admit::Accept
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_at_the_connection_budget_and_while_draining() {
        let p = AdmissionPolicy { max_connections: 2 };
        assert_eq!(p.decide(1, false), Admit::Accept);
        assert_eq!(p.decide(2, false), Admit::Refuse("max_connections"));
        assert_eq!(p.decide(0, true), Admit::Refuse("draining"));
    }
}
