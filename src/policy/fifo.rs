//! FIFO order (spec §4.1), pure: which records run in which order.
//!
//! Records of one `MessageGroupId` run one after another, in the order of
//! the batch; groups run side by side. After the first record of a group
//! that is not acknowledged, the rest of that group are not attempted
//! ([`Group::after`]).

/// The records of one message group, by their index in the batch, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub members: Vec<usize>,
}

/// What to do with a group's next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Process it.
    Process,
    /// Do not attempt it: an earlier record of its group was not
    /// acknowledged. It goes back to its queue, behind that record.
    Release,
}

/// The groups of a batch, in the order their first record appears; a
/// record without a group forms part of the group "".
pub fn groups<'a>(group_ids: impl IntoIterator<Item = Option<&'a str>>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, id) in group_ids.into_iter().enumerate() {
        let id = id.unwrap_or_default();
        match groups.iter_mut().find(|g| g.id == id) {
            Some(group) => group.members.push(i),
            None => groups.push(Group {
                id: id.to_owned(),
                members: vec![i],
            }),
        }
    }
    groups
}

impl Group {
    /// What to do with the next record, given whether every earlier one of
    /// the group was acknowledged.
    pub fn after(all_acknowledged: bool) -> Next {
        if all_acknowledged {
            Next::Process
        } else {
            Next::Release
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_grouped_in_batch_order() {
        let g = groups([Some("a"), Some("b"), Some("a"), None, Some("b"), None]);
        assert_eq!(
            g,
            [
                Group {
                    id: "a".into(),
                    members: vec![0, 2]
                },
                Group {
                    id: "b".into(),
                    members: vec![1, 4]
                },
                Group {
                    id: "".into(),
                    members: vec![3, 5]
                },
            ]
        );
        assert_eq!(groups([]), []);
    }

    #[test]
    fn a_group_stops_at_its_first_unacknowledged_record() {
        assert_eq!(Group::after(true), Next::Process);
        assert_eq!(Group::after(false), Next::Release);
    }
}
