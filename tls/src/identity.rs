//! Who is who: the identities a cluster's certificates name.
//!
//! Every certificate carries one DNS name in its subject alternative names,
//! `<role>.fulva`. A server checks a caller by that name (see
//! [`crate::PeerInfo::is`]); a client checks a server the same way, so a
//! connection to a node's address that reaches another node fails the
//! handshake. Each cluster has its own certificate authority, so the names
//! need not say which cluster they belong to.

use std::fmt;

/// A part of a cluster, as its certificate names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The coordinator (in Kubernetes, the operator): the only caller of a
    /// node's control service, and the server of the control endpoint.
    Coordinator,
    /// An operator's tool (`fulva migrate`, `fulva split`, ...): may change
    /// the shard map through the control endpoint.
    Admin,
    /// A client application: may read the shard map, nothing else.
    Client,
    /// A storage node, by its numeric id: pulls ranges from other nodes
    /// when a move names it as the destination.
    Node(u32),
}

impl Role {
    /// The DNS name a certificate for this role carries, e.g. `node-3.fulva`.
    pub fn dns_name(&self) -> String {
        format!("{}.fulva", self.file_stem())
    }

    /// The stem of this role's files in a TLS directory: `node-3` for
    /// `node-3.crt` and `node-3.key`.
    pub fn file_stem(&self) -> String {
        match self {
            Role::Coordinator => "coordinator".to_string(),
            Role::Admin => "admin".to_string(),
            Role::Client => "client".to_string(),
            Role::Node(id) => format!("node-{id}"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_stem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_its_own_name() {
        let roles = [Role::Coordinator, Role::Admin, Role::Client, Role::Node(0), Role::Node(4_000_000_000)];
        let names: std::collections::HashSet<String> = roles.iter().map(Role::dns_name).collect();
        assert_eq!(names.len(), roles.len());
        assert_eq!(Role::Node(3).dns_name(), "node-3.fulva");
        assert_eq!(Role::Coordinator.dns_name(), "coordinator.fulva");
    }
}
