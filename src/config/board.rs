//! Board profiles: partial configurations for the boards Huddle ships on, compiled
//! into the binary from `board/<name>/profile.toml`. A profile is merged *under* the
//! configuration file: its keys replace the built-in defaults, and every key the file
//! sets replaces the profile's (tables merge key by key).

/// One supported board.
#[derive(Debug, Clone, Copy)]
pub struct Board {
    pub name: &'static str,
    pub title: &'static str,
    pub profile: &'static str,
}

pub const BOARDS: &[Board] = &[
    Board {
        name: "rpi4",
        title: "Raspberry Pi 4 Model B / Compute Module 4",
        profile: include_str!("../../board/rpi4/profile.toml"),
    },
    Board {
        name: "rpi5",
        title: "Raspberry Pi 5",
        profile: include_str!("../../board/rpi5/profile.toml"),
    },
    Board {
        name: "rk3588",
        title: "Rockchip RK3588 boards",
        profile: include_str!("../../board/rk3588/profile.toml"),
    },
    Board {
        name: "imx8mp",
        title: "NXP i.MX 8M Plus boards",
        profile: include_str!("../../board/imx8mp/profile.toml"),
    },
    Board {
        name: "x86_64",
        title: "Generic x86_64 (development)",
        profile: include_str!("../../board/x86_64/profile.toml"),
    },
];

pub fn find(name: &str) -> Option<&'static Board> {
    BOARDS.iter().find(|b| b.name == name)
}

pub fn names() -> String {
    BOARDS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
}

/// Merges `over` into `base`: tables recursively, every other value replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_deep_and_the_overlay_wins() {
        let mut base: toml::Table = toml::from_str(
            "[rooms]\nmax_rooms = 4\nmax_participants = 8\n[log]\nlevel = \"info\"\n",
        )
        .unwrap();
        let over: toml::Table = toml::from_str("[rooms]\nmax_rooms = 2\n").unwrap();
        merge(&mut base, over);
        assert_eq!(base["rooms"]["max_rooms"].as_integer(), Some(2));
        assert_eq!(base["rooms"]["max_participants"].as_integer(), Some(8));
        assert_eq!(base["log"]["level"].as_str(), Some("info"));
    }
}
