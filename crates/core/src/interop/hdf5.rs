//! HDF5 as Keras uses it: a tree of groups holding float32 datasets, with
//! string attributes on some groups. Reads every dataset of a file by path;
//! writes such a tree. Through hdf5-pure (pure Rust, no libhdf5).
use std::collections::BTreeMap;

use hdf5_pure::{AttrValue, DType, File, FileBuilder};

use super::InteropError;

/// One dataset: row-major values and their shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Most datasets a weights file may hold (a model within the spec limits
/// has far fewer); bounds the work a crafted file can cause.
pub const MAX_DATASETS: usize = 4096;

/// Every dataset in the file, by its path from the root ("a/b/0"), as f32.
/// `file` names the file in errors.
pub fn read_datasets(file: &str, bytes: Vec<u8>) -> Result<BTreeMap<String, Array>, InteropError> {
    let bad = |e: hdf5_pure::Error| InteropError::unreadable(file, e);
    if !hdf5_pure::is_hdf5_bytes(&bytes) {
        return Err(InteropError::unreadable(file, "not an HDF5 file"));
    }
    let h5 = File::from_bytes(bytes).map_err(bad)?;
    let mut out = BTreeMap::new();
    let mut pending = vec![String::new()];
    while let Some(prefix) = pending.pop() {
        let group = if prefix.is_empty() {
            h5.root()
        } else {
            h5.group(&prefix).map_err(bad)?
        };
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            }
        };
        for name in group.groups().map_err(bad)? {
            pending.push(join(&name));
        }
        for name in group.datasets().map_err(bad)? {
            let path = join(&name);
            let ds = h5.dataset(&path).map_err(bad)?;
            match ds.dtype().map_err(bad)? {
                DType::F32 | DType::F64 => {}
                other => {
                    return Err(InteropError::weight(
                        &path,
                        format!("is {other:?}; weights must be float32"),
                    ))
                }
            }
            let shape = ds.shape().map_err(bad)?;
            let data = ds.read_f32().map_err(bad)?;
            let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            if shape.iter().product::<usize>() != data.len() {
                return Err(InteropError::weight(
                    &path,
                    "holds fewer values than its shape",
                ));
            }
            out.insert(path, Array { shape, data });
            if out.len() > MAX_DATASETS {
                return Err(InteropError::unreadable(
                    file,
                    format!("holds more than {MAX_DATASETS} datasets"),
                ));
            }
        }
    }
    Ok(out)
}

/// A group to write: string attributes, datasets and sub-groups, each in
/// name order.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    attrs: BTreeMap<String, String>,
    datasets: BTreeMap<String, Array>,
    groups: BTreeMap<String, Tree>,
}

impl Tree {
    /// The group at `path` (slash-separated), created if missing.
    pub fn group(&mut self, path: &str) -> &mut Tree {
        path.split('/')
            .filter(|p| !p.is_empty())
            .fold(self, |tree, name| {
                tree.groups.entry(name.into()).or_default()
            })
    }

    pub fn attr(&mut self, name: &str, value: &str) -> &mut Self {
        self.attrs.insert(name.into(), value.into());
        self
    }

    pub fn dataset(&mut self, name: &str, array: Array) -> &mut Self {
        self.datasets.insert(name.into(), array);
        self
    }

    /// The tree as an HDF5 file (the root group is `self`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, InteropError> {
        let mut builder = FileBuilder::new();
        for (name, value) in &self.attrs {
            builder.set_attr(name, AttrValue::VarLenString(value.clone()));
        }
        for (name, array) in &self.datasets {
            builder
                .create_dataset(name)
                .with_f32_data(&array.data)
                .with_shape(&dims(&array.shape));
        }
        for (name, tree) in &self.groups {
            let mut group = builder.create_group(name);
            tree.fill(&mut group);
            builder.add_group(group.finish());
        }
        builder
            .finish()
            .map_err(|e| InteropError::Model(format!("writing HDF5: {e}")))
    }

    fn fill(&self, group: &mut hdf5_pure::GroupBuilder) {
        for (name, value) in &self.attrs {
            group.set_attr(name, AttrValue::VarLenString(value.clone()));
        }
        for (name, array) in &self.datasets {
            group
                .create_dataset(name)
                .with_f32_data(&array.data)
                .with_shape(&dims(&array.shape));
        }
        for (name, tree) in &self.groups {
            let mut child = group.create_group(name);
            tree.fill(&mut child);
            group.add_group(child.finish());
        }
    }
}

fn dims(shape: &[usize]) -> Vec<u64> {
    shape.iter().map(|&d| d as u64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_tree_reads_back_path_by_path() {
        let mut tree = Tree::default();
        let kernel = Array {
            shape: vec![2, 3],
            data: vec![1.0, -2.0, 3.5, 0.25, 5.0, -6.0],
        };
        let bias = Array {
            shape: vec![3],
            data: vec![0.5, 0.0, -1.0],
        };
        tree.group("layers/lstm/cell/vars")
            .attr("name", "lstm_cell")
            .dataset("0", kernel.clone())
            .dataset("1", bias.clone());
        tree.group("vars").attr("name", "sequential");
        let read = read_datasets("t.h5", tree.to_bytes().unwrap()).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read["layers/lstm/cell/vars/0"], kernel);
        assert_eq!(read["layers/lstm/cell/vars/1"], bias);
    }

    #[test]
    fn garbage_is_refused_naming_the_file() {
        let err = read_datasets("model.weights.h5", b"not hdf5 at all".to_vec()).unwrap_err();
        assert!(err.to_string().contains("model.weights.h5"), "{err}");
    }
}
