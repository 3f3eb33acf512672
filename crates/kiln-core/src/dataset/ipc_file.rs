//! An Arrow IPC file held in memory and read with every offset and length checked first
//! (the dataset artifact's reader; arrow's own `FileReader` trusts a corrupt footer).

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::{FileDecoder, read_footer_length};
use arrow_schema::Schema as ArrowSchema;
use std::sync::Arc;

/// An Arrow IPC file held in memory, read as arrow's zero-copy example does — but with
/// every offset and length the file states checked against the bytes present before
/// arrow slices them: arrow's `FileReader` allocates whatever a corrupt footer announces.
pub(super) struct IpcFile {
    pub(super) schema: Arc<ArrowSchema>,
    buffer: Buffer,
    decoder: FileDecoder,
    /// (offset, length) of each record batch block.
    blocks: Vec<(usize, usize)>,
    /// The same blocks as arrow's footer entries.
    entries: Vec<arrow_ipc::Block>,
}

impl IpcFile {
    pub(super) fn open(bytes: Vec<u8>) -> std::result::Result<IpcFile, String> {
        let buffer = Buffer::from_vec(bytes);
        let len = buffer.len();
        let too_short = || format!("the file holds {len} bytes, too few for an Arrow IPC file");
        let trailer_start = len
            .checked_sub(10)
            .filter(|&t| t >= 8)
            .ok_or_else(too_short)?;
        let trailer: [u8; 10] = buffer[trailer_start..]
            .try_into()
            .map_err(|_| too_short())?;
        let footer_len = read_footer_length(trailer).map_err(|e| e.to_string())?;
        let footer_start = trailer_start
            .checked_sub(footer_len)
            .filter(|&s| s >= 8)
            .ok_or_else(|| {
                format!("the footer claims {footer_len} bytes but the file holds {len}")
            })?;
        let footer = arrow_ipc::root_as_footer(&buffer[footer_start..trailer_start])
            .map_err(|e| format!("the footer is corrupt ({e})"))?;
        let ipc_schema = footer.schema().ok_or("the footer has no schema")?;
        if !ipc_schema.endianness().equals_to_target_endianness() {
            return Err("the file's byte order is not this machine's".into());
        }
        let schema = arrow_ipc::convert::try_fb_to_schema(ipc_schema).map_err(|e| e.to_string())?;
        let schema = Arc::new(schema);
        let mut decoder = FileDecoder::new(schema.clone(), footer.version());
        let span = |b: &arrow_ipc::Block| check_block(&buffer[..footer_start], b);
        for b in footer.dictionaries().iter().flatten() {
            let (o, n) = span(b)?;
            decoder
                .read_dictionary(b, &buffer.slice_with_length(o, n))
                .map_err(|e| e.to_string())?;
        }
        let entries: Vec<arrow_ipc::Block> = footer
            .recordBatches()
            .ok_or("the footer lists no record batches")?
            .iter()
            .copied()
            .collect();
        let blocks = entries
            .iter()
            .map(span)
            .collect::<std::result::Result<_, _>>()?;
        Ok(IpcFile {
            schema,
            buffer,
            decoder,
            blocks,
            entries,
        })
    }

    pub(super) fn n_batches(&self) -> usize {
        self.blocks.len()
    }

    /// Record batch `k` (None for an empty message).
    pub(super) fn batch(&self, k: usize) -> std::result::Result<Option<RecordBatch>, String> {
        let (o, n) = self.blocks[k];
        self.decoder
            .read_record_batch(&self.entries[k], &self.buffer.slice_with_length(o, n))
            .map_err(|e| e.to_string())
    }
}

/// The bytes `(offset, length)` of one block of an IPC file whose data ends where `data`
/// does, after checking what arrow would otherwise trust (and panic or allocate on): the
/// block lies inside the data, its message is framed and decodes, and every buffer the
/// message names lies inside the block's body.
fn check_block(data: &[u8], b: &arrow_ipc::Block) -> std::result::Result<(usize, usize), String> {
    let claim = || {
        format!(
            "a block claims bytes {}..+{}+{} of {}",
            b.offset(),
            b.metaDataLength(),
            b.bodyLength(),
            data.len()
        )
    };
    let offset = usize::try_from(b.offset()).map_err(|_| claim())?;
    let meta = usize::try_from(b.metaDataLength()).map_err(|_| claim())?;
    let body = u64::try_from(b.bodyLength()).map_err(|_| claim())?;
    let size = usize::try_from(body)
        .ok()
        .and_then(|body| body.checked_add(meta))
        .ok_or_else(claim)?;
    let block = offset
        .checked_add(size)
        .and_then(|end| data.get(offset..end))
        .ok_or_else(claim)?;
    let frame = block
        .get(..meta)
        .filter(|m| m.len() >= 8)
        .ok_or_else(claim)?;
    // an encapsulated message: 0xFFFFFFFF, its length, the flatbuffer
    let message = if frame[..4] == [0xff; 4] {
        &frame[8..]
    } else {
        &frame[4..]
    };
    let message =
        arrow_ipc::root_as_message(message).map_err(|e| format!("a message is corrupt ({e})"))?;
    let batch = message
        .header_as_record_batch()
        .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    if let Some(batch) = batch {
        if batch.compression().is_some() {
            return Err(
                "its record batches are compressed; kiln reads uncompressed Arrow IPC".into(),
            );
        }
        for buf in batch.buffers().iter().flatten() {
            let inside = u64::try_from(buf.offset())
                .ok()
                .zip(u64::try_from(buf.length()).ok())
                .and_then(|(o, n)| o.checked_add(n))
                .is_some_and(|end| end <= body);
            if !inside {
                return Err(format!(
                    "a buffer claims bytes {}..+{} of a {body}-byte body",
                    buf.offset(),
                    buf.length()
                ));
            }
        }
    }
    Ok((offset, size))
}
