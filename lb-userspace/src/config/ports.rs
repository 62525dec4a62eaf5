//! The ports a service covers: one port, several ports and ranges
//! (`ports = [2811, "50000-51000"]`, GridFTP's control port and its data
//! range), or every port of the VIP (`port = 0`, IPVS's port-0 service).
//! All of a service's ports share one service: one id, one backend set, one
//! scheduler state, one persistence scope.

use std::fmt;

use lb_common::ANY_PORT;

/// The ports a service covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    /// Every port of the VIP (`port = 0`): one service-map entry, which the
    /// data path uses for any port no other service of the VIP has.
    Every,
    /// Inclusive ranges, sorted, disjoint and not adjacent (a single port
    /// is a range of one).
    Ranges(Vec<(u16, u16)>),
}

impl Ports {
    /// One port; 0 is every port.
    pub fn single(port: u16) -> Self {
        if port == ANY_PORT {
            Self::Every
        } else {
            Self::Ranges(vec![(port, port)])
        }
    }

    /// The ports of inclusive ranges `ranges` (each `start <= end`, ports
    /// from 1), in any order; `Err` with a port two of them share.
    pub fn from_ranges(mut ranges: Vec<(u16, u16)>) -> Result<Self, u16> {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => return Err(start),
                Some(last) if start == last.1 + 1 => last.1 = end,
                _ => merged.push((start, end)),
            }
        }
        Ok(Self::Ranges(merged))
    }

    /// The port the service is known by: its lowest (0: every port).
    pub fn first(&self) -> u16 {
        match self {
            Self::Every => ANY_PORT,
            Self::Ranges(ranges) => ranges.first().map_or(ANY_PORT, |r| r.0),
        }
    }

    /// Whether this is one port (or every port): what `port = N` says.
    pub fn is_single(&self) -> bool {
        match self {
            Self::Every => true,
            Self::Ranges(ranges) => matches!(ranges.as_slice(), [(a, b)] if a == b),
        }
    }

    /// The ports of the service's entries in the service map: each port,
    /// or [`ANY_PORT`] alone for every port.
    pub fn key_ports(&self) -> Box<dyn Iterator<Item = u16> + '_> {
        match self {
            Self::Every => Box::new(std::iter::once(ANY_PORT)),
            Self::Ranges(ranges) => Box::new(ranges.iter().flat_map(|&(a, b)| a..=b)),
        }
    }

    /// How many service-map entries the service takes.
    pub fn key_count(&self) -> u32 {
        match self {
            Self::Every => 1,
            Self::Ranges(ranges) => ranges
                .iter()
                .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
                .sum(),
        }
    }

    /// A port both cover, if any (every port overlaps only every port: a
    /// port's own service wins over it).
    pub fn shared_port(&self, other: &Self) -> Option<u16> {
        let (Self::Ranges(ours), Self::Ranges(theirs)) = (self, other) else {
            return matches!((self, other), (Self::Every, Self::Every)).then_some(ANY_PORT);
        };
        ours.iter().find_map(|&(a, b)| {
            theirs
                .iter()
                .find(|&&(c, d)| a <= d && c <= b)
                .map(|&(c, _)| a.max(c))
        })
    }

    /// The ports of service-map entries `ports` (any order), as
    /// [`Ports::key_ports`] lists them.
    pub fn of_key_ports(ports: impl IntoIterator<Item = u16>) -> Self {
        let mut ports: Vec<u16> = ports.into_iter().collect();
        ports.sort_unstable();
        ports.dedup();
        if ports.contains(&ANY_PORT) {
            return Self::Every;
        }
        let ranges = ports.into_iter().map(|p| (p, p)).collect();
        Self::from_ranges(ranges).unwrap_or(Self::Every)
    }
}

impl fmt::Display for Ports {
    /// `2811`, `2811,50000-51000`, or `0` for every port (as ipvsadm shows
    /// a port-0 service).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Every => write!(f, "{ANY_PORT}"),
            Self::Ranges(ranges) => {
                for (i, &(a, b)) in ranges.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    if a == b {
                        write!(f, "{sep}{a}")?;
                    } else {
                        write!(f, "{sep}{a}-{b}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_show_compactly() {
        let ports = Ports::from_ranges(vec![(50000, 50100), (2811, 2811), (50101, 51000)]).unwrap();
        assert_eq!(ports, Ports::Ranges(vec![(2811, 2811), (50000, 51000)]));
        assert_eq!(ports.to_string(), "2811,50000-51000");
        assert_eq!(ports.first(), 2811);
        assert_eq!(ports.key_count(), 1002);
        assert_eq!(ports.key_ports().count(), 1002);
        assert!(!ports.is_single());
        assert_eq!(Ports::of_key_ports(ports.key_ports()), ports);
        assert_eq!(Ports::from_ranges(vec![(10, 20), (20, 30)]), Err(20));
    }

    #[test]
    fn every_port_is_one_entry() {
        let every = Ports::single(0);
        assert_eq!(every, Ports::Every);
        assert_eq!(every.to_string(), "0");
        assert_eq!(every.key_ports().collect::<Vec<_>>(), [ANY_PORT]);
        assert_eq!(every.key_count(), 1);
        assert!(every.is_single());
        assert_eq!(Ports::of_key_ports([0]), Ports::Every);
    }

    #[test]
    fn overlaps_are_found() {
        let data = Ports::from_ranges(vec![(50000, 51000)]).unwrap();
        assert_eq!(data.shared_port(&Ports::single(50500)), Some(50500));
        assert_eq!(data.shared_port(&Ports::single(2811)), None);
        assert_eq!(
            data.shared_port(&Ports::from_ranges(vec![(49000, 50000)]).unwrap()),
            Some(50000)
        );
        assert_eq!(Ports::Every.shared_port(&data), None);
        assert_eq!(Ports::Every.shared_port(&Ports::Every), Some(0));
    }
}
