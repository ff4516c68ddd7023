//! How the partial results of one rank meet the others': the two
//! allreduces of every layer ([`Op`]) and the logits gather, behind the
//! [`Collective`] trait the forward calls. [`Solo`] is the single rank's
//! (nothing to exchange); the network's hub and worker sides implement it
//! in `net::allreduce`.

/// Why an exchange failed: the collective's own error (the network's
/// names the peer, its rank, the step and the message), kept whole.
pub type CommError = super::error::Cause;

/// The two allreduces of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Attention,
    Mlp,
}

impl Op {
    /// The message number of this allreduce in layer `layer`'s step:
    /// `seq = 2*layer + op` (0 attention, 1 MLP), the one place it is made.
    pub fn seq(self, layer: usize) -> u32 {
        (2 * layer + usize::from(self == Op::Mlp)) as u32
    }

    /// The (layer, op) of an allreduce message number.
    pub fn of_seq(seq: u32) -> (usize, Op) {
        let op = if seq.is_multiple_of(2) {
            Op::Attention
        } else {
            Op::Mlp
        };
        ((seq / 2) as usize, op)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Attention => "attention",
            Op::Mlp => "mlp",
        })
    }
}

/// A forward rank 0 asks a worker for: `tokens` at positions `pos..`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub tokens: Vec<u32>,
    pub pos: usize,
    pub want_logits: bool,
}

/// How partial results of this rank meet the other ranks'.
pub trait Collective {
    /// A worker's next step from rank 0, or `None` when rank 0 ends the
    /// session (rank 0 and a single rank drive their own steps: `None`).
    fn next_step(&mut self) -> Result<Option<Step>, CommError> {
        Ok(None)
    }
    /// A forward for `tokens` at `pos..` begins (the hub tells the workers).
    fn begin_step(
        &mut self,
        _tokens: &[u32],
        _pos: usize,
        _want_logits: bool,
    ) -> Result<(), CommError> {
        Ok(())
    }
    /// Sum `x` over all ranks, in place (every rank ends with the same sum).
    fn allreduce_sum(&mut self, x: &mut [f32], layer: usize, op: Op) -> Result<(), CommError>;
    /// Gather each rank's logits rows into `full` on rank 0. Returns whether
    /// `full` holds the complete logits on this rank.
    fn gather_logits(&mut self, mine: &[f32], full: &mut [f32]) -> Result<bool, CommError>;
    /// Whether a forward may carry several tokens (prompt prefill).
    fn batches(&self) -> bool {
        false
    }
}

/// The collective of a single rank: nothing to exchange.
pub struct Solo;

impl Collective for Solo {
    fn allreduce_sum(&mut self, _x: &mut [f32], _layer: usize, _op: Op) -> Result<(), CommError> {
        Ok(())
    }
    fn gather_logits(&mut self, mine: &[f32], full: &mut [f32]) -> Result<bool, CommError> {
        full.copy_from_slice(mine);
        Ok(true)
    }
    fn batches(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_numbers_two_allreduces_per_layer_and_decode_back() {
        assert_eq!(Op::Attention.seq(0), 0);
        assert_eq!(Op::Mlp.seq(0), 1);
        assert_eq!(Op::Attention.seq(3), 6);
        for l in 0..100 {
            for op in [Op::Attention, Op::Mlp] {
                assert_eq!(Op::of_seq(op.seq(l)), (l, op));
            }
        }
    }
}
