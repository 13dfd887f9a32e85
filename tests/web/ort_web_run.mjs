// Runs an ONNX model in onnxruntime-web's WebAssembly backend, the one a browser without WebGPU
// runs, from Node.js: tests/unit/test_runtimes.py's onnxruntime-web runner.
// usage: node ort_web_run.mjs MODEL IMAGES N,C,H,W LOGITS
// IMAGES holds float32 little-endian NCHW pixels; LOGITS gets the float32 logits. Prints the
// onnxruntime-web version, then the logits' shape as JSON.
import { readFile, writeFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-web';

const [model, imagesPath, shape, logitsPath] = process.argv.slice(2);
ort.env.wasm.numThreads = 1; // the test runs several at once; one thread each is enough
const session = await ort.InferenceSession.create(await readFile(model), {
  executionProviders: ['wasm'],
});
const bytes = await readFile(imagesPath);
const pixels = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
const image = new ort.Tensor('float32', pixels, shape.split(',').map(Number));
const { logits } = await session.run({ image });
const out = logits.data;
await writeFile(logitsPath, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
console.log(ort.env.versions.web);
console.log(JSON.stringify(logits.dims));
