//! An ordered registry of a model's tensors. Checkpoints, BN statistics and the optimiser's
//! parameter groups all need module order and torchvision's names, which a hash map of
//! variables does not keep.

use tch::{Device, Kind, Tensor};

/// Optimiser parameter group (docs/method.md §3): backbone base lr×1, the rest of the backbone (the
/// BN head) lr×10, classifier lr×10.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    Base,
    Head,
    Classifier,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Base, Group::Head, Group::Classifier];

    pub fn lr_mult(self) -> f64 {
        match self {
            Group::Base => 1.0,
            Group::Head | Group::Classifier => 10.0,
        }
    }
}

/// What a registered tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Learned by the optimiser.
    Trainable(Group),
    /// Running statistics and counters.
    Buffer,
}

pub struct Entry {
    pub name: String,
    pub tensor: Tensor,
    pub role: Role,
}

/// Tensors in module order, named as the reference's state dicts.
pub struct Params {
    pub device: Device,
    entries: Vec<Entry>,
}

impl Params {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            entries: Vec::new(),
        }
    }

    /// Registers `tensor` under `name`; returns a handle sharing its storage.
    pub fn add(&mut self, name: String, tensor: Tensor, role: Role) -> Tensor {
        let tensor = tensor.to_device(self.device).detach();
        let tensor = if matches!(role, Role::Trainable(_)) {
            tensor.set_requires_grad(true)
        } else {
            tensor
        };
        let handle = tensor.shallow_clone();
        self.entries.push(Entry { name, tensor, role });
        handle
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.tensor)
    }

    /// The trainable tensors of a group.
    pub fn trainable(&self, group: Group) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(move |e| e.role == Role::Trainable(group))
    }

    /// Number of trainable scalars whose name starts with `prefix`.
    pub fn count_trainable(&self, prefix: &str) -> i64 {
        self.entries
            .iter()
            .filter(|e| matches!(e.role, Role::Trainable(_)) && e.name.starts_with(prefix))
            .map(|e| e.tensor.numel() as i64)
            .sum()
    }
}

/// A name prefix inside a [`Params`], as `tch::nn::Path` is inside a var store.
pub struct Scope<'a> {
    params: &'a mut Params,
    prefix: String,
    group: Group,
}

impl<'a> Scope<'a> {
    pub fn root(params: &'a mut Params, prefix: &str, group: Group) -> Self {
        Self {
            params,
            prefix: prefix.to_string(),
            group,
        }
    }

    /// A child scope `prefix.name`.
    pub fn sub(&mut self, name: impl std::fmt::Display) -> Scope<'_> {
        Scope {
            prefix: join(&self.prefix, &name.to_string()),
            params: self.params,
            group: self.group,
        }
    }

    pub fn device(&self) -> Device {
        self.params.device
    }

    fn name(&self, name: &str) -> String {
        join(&self.prefix, name)
    }

    pub fn trainable(&mut self, name: &str, tensor: Tensor) -> Tensor {
        let (n, g) = (self.name(name), self.group);
        self.params.add(n, tensor, Role::Trainable(g))
    }

    pub fn buffer(&mut self, name: &str, tensor: Tensor) -> Tensor {
        let n = self.name(name);
        self.params.add(n, tensor, Role::Buffer)
    }

    /// Normal(0, std) initialised tensor of `shape` on the CPU (moved by `add`).
    pub fn normal(shape: &[i64], std: f64) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu)) * std
    }
}

/// `prefix.name`, or `name` at the root: the one dotted-key joiner of parameter names
/// (scopes here, flattened `.pth` keys in `pth::flatten`).
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
