//! ResNet-34/50 laid out and named as torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, …,
//! `layerN.0.downsample.0/.1`), so ImageNet weights and the reference's checkpoints load
//! by name. layer4's stride is the ReID "last stride".

use super::layers::{BatchNorm, Conv2d, Norms};
use super::params::Scope;
use tch::Tensor;

/// ResNet depth: 50 (Bottleneck blocks) or 34 (BasicBlocks), both [3, 4, 6, 3].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    R34,
    R50,
}

crate::named_values!(Depth { R34 => "34", R50 => "50" });

impl Depth {
    /// Width of layer4's output, which the embedding must equal.
    pub fn feature_width(self) -> i64 {
        match self {
            Depth::R34 => 512,
            Depth::R50 => 2048,
        }
    }

    pub fn number(self) -> i64 {
        match self {
            Depth::R34 => 34,
            Depth::R50 => 50,
        }
    }

    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            34 => Some(Depth::R34),
            50 => Some(Depth::R50),
            _ => None,
        }
    }

    fn expansion(self) -> i64 {
        match self {
            Depth::R34 => 1,
            Depth::R50 => 4,
        }
    }
}

struct Block {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new(s: &mut Scope, depth: Depth, cin: i64, planes: i64, stride: i64) -> Self {
        let cout = planes * depth.expansion();
        // (in, out, kernel, stride, padding) of conv1, conv2[, conv3].
        let shapes: Vec<(i64, i64, i64, i64, i64)> = match depth {
            Depth::R34 => vec![(cin, planes, 3, stride, 1), (planes, planes, 3, 1, 1)],
            Depth::R50 => vec![
                (cin, planes, 1, 1, 0),
                (planes, planes, 3, stride, 1),
                (planes, cout, 1, 1, 0),
            ],
        };
        let mut convs = Vec::new();
        let mut bns = Vec::new();
        for (i, &(ci, co, k, st, p)) in shapes.iter().enumerate() {
            convs.push(Conv2d::new(
                &mut s.sub(format!("conv{}", i + 1)),
                ci,
                co,
                k,
                st,
                p,
            ));
            bns.push(BatchNorm::new(&mut s.sub(format!("bn{}", i + 1)), co));
        }
        let downsample = (stride != 1 || cin != cout).then(|| {
            let mut d = s.sub("downsample");
            let conv = Conv2d::new(&mut d.sub(0), cin, cout, 1, stride, 0);
            let norm = BatchNorm::new(&mut d.sub(1), cout);
            (conv, norm)
        });
        Self {
            convs,
            bns,
            downsample,
        }
    }

    fn forward(&self, x: &Tensor, norms: &mut Norms) -> Tensor {
        let last = self.convs.len() - 1;
        let mut out = x.shallow_clone();
        for (i, (conv, norm)) in self.convs.iter().zip(&self.bns).enumerate() {
            out = norm.forward(&conv.forward(&out), norms);
            if i < last {
                out = out.relu_();
            }
        }
        let identity = match &self.downsample {
            Some((conv, norm)) => norm.forward(&conv.forward(x), norms),
            None => x.shallow_clone(),
        };
        (out + identity).relu_()
    }
}

/// The ResNet trunk without its ImageNet classifier.
pub struct Base {
    conv1: Conv2d,
    bn1: BatchNorm,
    layers: Vec<Vec<Block>>,
}

impl Base {
    pub fn new(s: &mut Scope, depth: Depth, last_stride: i64) -> Self {
        let conv1 = Conv2d::new(&mut s.sub("conv1"), 3, 64, 7, 2, 3);
        let bn1 = BatchNorm::new(&mut s.sub("bn1"), 64);
        let mut cin = 64;
        let mut layers = Vec::new();
        for (i, (planes, blocks, stride)) in
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, last_stride)]
                .into_iter()
                .enumerate()
        {
            let mut layer_scope = s.sub(format!("layer{}", i + 1));
            let mut layer = Vec::new();
            for b in 0..blocks {
                let st = if b == 0 { stride } else { 1 };
                layer.push(Block::new(&mut layer_scope.sub(b), depth, cin, planes, st));
                cin = planes * depth.expansion();
            }
            layers.push(layer);
        }
        Self { conv1, bn1, layers }
    }

    /// The four layer outputs (`maps`).
    pub fn forward(&self, x: &Tensor, norms: &mut Norms) -> Vec<Tensor> {
        let x = self.bn1.forward(&self.conv1.forward(x), norms).relu_();
        let mut x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut maps = Vec::with_capacity(4);
        for layer in &self.layers {
            for block in layer {
                x = block.forward(&x, norms);
            }
            maps.push(x.shallow_clone());
        }
        maps
    }
}
