// Reads the text chunks (tEXt, zTXt, iTXt) of a PNG, as ComfyUI's frontend does to load the
// `workflow` (then `prompt`) a saved image carries.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

function decodeText(bytes: Uint8Array): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return new TextDecoder('latin1').decode(bytes);
  }
}

async function inflate(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(new DecompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

export function isPng(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && SIGNATURE.every((b, i) => bytes[i] === b);
}

export async function readPngText(buffer: ArrayBuffer | Uint8Array): Promise<Record<string, string>> {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  if (!isPng(bytes)) throw new Error('not a PNG file');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Record<string, string> = {};
  let pos = 8;
  while (pos + 8 <= bytes.length) {
    const len = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + len);
    pos += 12 + len;
    if (type === 'IEND') break;
    if (type !== 'tEXt' && type !== 'iTXt' && type !== 'zTXt') continue;
    const nul = data.indexOf(0);
    if (nul < 0) continue;
    const key = new TextDecoder('latin1').decode(data.subarray(0, nul));
    try {
      if (type === 'tEXt') {
        out[key] = decodeText(data.subarray(nul + 1));
      } else if (type === 'zTXt') {
        out[key] = decodeText(await inflate(data.subarray(nul + 2)));
      } else {
        const compressed = data[nul + 1] === 1;
        let p = nul + 3;
        const langEnd = data.indexOf(0, p);
        if (langEnd < 0) continue;
        const transEnd = data.indexOf(0, langEnd + 1);
        if (transEnd < 0) continue;
        p = transEnd + 1;
        const body = data.subarray(p);
        out[key] = new TextDecoder('utf-8').decode(compressed ? await inflate(body) : body);
      }
    } catch {
      // A damaged chunk is skipped.
    }
  }
  return out;
}

/** The workflow a PNG carries: `workflow` (editor JSON) first, then `prompt` (API JSON). */
export async function workflowFromPng(buffer: ArrayBuffer | Uint8Array): Promise<{ workflow?: unknown; prompt?: unknown }> {
  const text = await readPngText(buffer);
  const parse = (s: string | undefined) => {
    if (!s) return undefined;
    try {
      return JSON.parse(s);
    } catch {
      return undefined;
    }
  };
  const workflow = parse(text.workflow);
  if (workflow && typeof workflow === 'object') return { workflow };
  const prompt = parse(text.prompt);
  if (prompt && typeof prompt === 'object') return { prompt };
  return {};
}
