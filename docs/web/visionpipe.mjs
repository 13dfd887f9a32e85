// What a visionpipe export needs in JavaScript beside onnxruntime-web, for the browser and Node.js:
// the class names and image size from the model file, and a photo's pixels as `visionpipe
// predict` feeds them. docs/web/index.html shows both in use; docs/deploy.md says more.

// The model file's metadata (classes, image_size), which onnxruntime-web does not expose.
// ModelProto.metadata_props is field 14, a repeated StringStringEntryProto {key = 1, value = 2}.

function* fields(bytes, start = 0, end = bytes.length) {
  // Each protobuf field as [number, wire type, value]; a length-delimited value is its bytes.
  let pos = start;
  const varint = () => {
    let value = 0, scale = 1, byte;
    do { byte = bytes[pos++]; value += (byte & 0x7f) * scale; scale *= 128; } while (byte & 0x80);
    return value;
  };
  while (pos < end) {
    const key = varint(), number = Math.floor(key / 8), wire = key & 7;
    if (wire === 0) yield [number, wire, varint()];
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) { const n = varint(); yield [number, wire, bytes.subarray(pos, pos + n)]; pos += n; }
    else throw new Error(`not an ONNX model file (protobuf wire type ${wire})`);
  }
}

export function modelMetadata(bytes) {
  const text = new TextDecoder(), meta = {};
  for (const [number, wire, entry] of fields(bytes)) {
    if (number !== 14 || wire !== 2) continue;
    const pair = {};
    for (const [n, w, v] of fields(entry)) if (w === 2) pair[n] = text.decode(v);
    meta[pair[1]] = pair[2] ?? '';
  }
  return meta;
}

// A photo as visionpipe predict sees it (src/visionpipe/images.py, resize_center_crop).
// The shorter side resized to `size` with Pillow's BILINEAR (a triangle filter widened by the
// downscale factor, 22-bit fixed-point weights, rounded to 8 bits after each pass, horizontal
// first, as images.bilinear fixes it), then the centre square: the same bytes as predict for the
// same decoded pixels (beyond images.MAX_CROP_RATIO, where predict resizes only the centre square,
// within a level).

function pyRound(x) { // Python's round(): halves go to the even integer
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function pillowWeights(inSize, outSize) {
  const scale = inSize / outSize, filterScale = Math.max(scale, 1), support = filterScale;
  return Array.from({ length: outSize }, (_, i) => {
    const center = (i + 0.5) * scale;
    const first = Math.max(0, Math.trunc(center - support + 0.5));
    const last = Math.min(inSize, Math.trunc(center + support + 0.5));
    const w = [];
    for (let x = first; x < last; x++) w.push(Math.max(0, 1 - Math.abs((x - center + 0.5) * (1 / filterScale))));
    const sum = w.reduce((a, b) => a + b, 0);
    const fixed = w.map(v => Math.trunc((sum ? v / sum : v) * 4194304 + 0.5)); // 2 ** 22
    return { first, fixed };
  });
}

function resample(src, width, height, outW, outH, horizontal) {
  // One pass over RGBA bytes: along rows (horizontal) to outW x height, or columns to width x outH.
  const out = new Uint8ClampedArray(outW * outH * 4);
  const weights = pillowWeights(horizontal ? width : height, horizontal ? outW : outH);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const { first, fixed } = weights[horizontal ? x : y];
      for (let c = 0; c < 3; c++) {
        let sum = 2097152; // 2 ** 21: rounds the 22-bit fraction
        for (let k = 0; k < fixed.length; k++) {
          const at = horizontal ? (y * width + first + k) : ((first + k) * width + x);
          sum += src[at * 4 + c] * fixed[k];
        }
        out[(y * outW + x) * 4 + c] = Math.floor(sum / 4194304);
      }
    }
  }
  return out;
}

export function modelInput(rgba, width, height, size) {
  // RGBA bytes (an ImageData's) -> the model's input `image` [1, 3, size, size]: RGB in [0, 1].
  const scale = size / Math.min(width, height);
  const w = Math.max(size, pyRound(width * scale)), h = Math.max(size, pyRound(height * scale));
  let pixels = rgba;
  if (w !== width) pixels = resample(pixels, width, height, w, height, true);
  if (h !== height) pixels = resample(pixels, w, height, w, h, false);
  const left = Math.floor((w - size) / 2), top = Math.floor((h - size) / 2);
  const input = new Float32Array(3 * size * size);
  for (let c = 0; c < 3; c++)
    for (let y = 0; y < size; y++)
      for (let x = 0; x < size; x++)
        input[(c * size + y) * size + x] = pixels[((top + y) * w + left + x) * 4 + c] / 255;
  return input;
}

export function percent(probability) {
  // A probability as `visionpipe predict` prints it: one decimal, two significant digits below
  // 1% (0.040%, where one decimal would read 0.0%), and "n/a" for a diverged model's NaN.
  if (!Number.isFinite(probability)) return 'n/a';
  const value = probability * 100;
  if (value > 0 && value < 1e-8) return '<0.00000001%';
  if (value > 0 && value < 1) {
    let more = 1 - Math.floor(Math.log10(value));
    if (Number(value.toFixed(more)) * 10 ** more >= 100) more -= 1; // 0.0996 rounds to 0.100
    const shown = value.toFixed(Math.min(8, Math.max(1, more)));
    if (Number(shown) < 1) return `${shown}%`; // 0.996% rounds to 1.00: then as any other 1%
  }
  return `${value.toFixed(1)}%`;
}
