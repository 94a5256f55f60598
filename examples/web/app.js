// ondevice artefact in the browser (issue 16): onnxruntime-web loads the artefact; a raw-feature
// artefact gets the record values as they are (strings, numbers) and encodes them in its graph,
// so this page encodes nothing: it only puts each column in the order the manifest lists.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

ort.env.wasm.numThreads = 1;
const params = new URLSearchParams(location.search);
const base = params.get("artefact") || "artefact/";
const out = document.getElementById("result");

const TYPED = { float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array };
const NONFINITE = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };

// {"dtype", "shape", "data"} as the manifest stores arrays -> ort.Tensor
function decode(a) {
  if (a.dtype === "string") return new ort.Tensor("string", a.data.map(String), a.shape);
  const data = a.data.map((v) => (typeof v === "string" ? NONFINITE[v] : v));
  const arr = a.dtype === "int64" ? BigInt64Array.from(data.map((v) => BigInt(v))) : TYPED[a.dtype].from(data);
  return new ort.Tensor(a.dtype, arr, a.shape);
}

// prepare's text of a categorical value: missing -> "", 3.0 -> "3" (runner.value_token)
const token = (v) => (v === null || v === undefined ? "" : String(v));
// a numeric value as Python's float() reads it (runner.value_number): missing ("" or null) -> NaN,
// "inf" / "-Infinity" / "nan" in any case -> ±Infinity / NaN (JavaScript's Number() says NaN to "inf")
function number(v) {
  if (v === null || v === undefined) return NaN;
  if (typeof v === "number") return v;
  const s = String(v).trim().toLowerCase();
  if (!s) return NaN;
  const m = s.match(/^([+-]?)(inf|infinity|nan)$/);
  if (m) return m[2] === "nan" ? NaN : m[1] === "-" ? -Infinity : Infinity;
  return Number(s);
}

// records -> feeds, column order from the manifest (raw_inputs.columns or the id input)
function feedsOf(manifest, records) {
  const feeds = {};
  const raw = manifest.raw_inputs;
  if (!raw) {
    for (const inp of manifest.inputs) {
      const width = inp.shape[1];
      const rows = records.map((r) => r[inp.name]);
      const flat = rows.flat();
      const arr = inp.dtype === "int64" ? BigInt64Array.from(flat.map((v) => BigInt(v))) : TYPED[inp.dtype].from(flat);
      feeds[inp.name] = new ort.Tensor(inp.dtype, arr, [records.length, width]);
    }
    return feeds;
  }
  const buckets = (raw.hashing || {}).fields || {};
  for (const inp of raw.inputs) {
    const cols = raw.columns.filter((c) => c.input === inp.name).sort((a, b) => a.index - b.index);
    const values = [];
    for (const r of records) {
      for (const c of cols) {
        const v = r[c.name];
        if (c.kind === "string") values.push(token(v));
        else if (c.kind === "number") values.push(number(v));
        else values.push(BigInt(globalThis.ondeviceHash.hashId(v, buckets[c.fields[0]])));  // hash_reference.js
      }
    }
    const arr = inp.dtype === "string" ? values : inp.dtype === "int64" ? BigInt64Array.from(values) : Float64Array.from(values);
    feeds[inp.name] = new ort.Tensor(inp.dtype, arr, [records.length, cols.length]);
  }
  return feeds;
}

const plain = (t) => Array.from(t.data, (v) => (typeof v === "bigint" ? Number(v) : v));

async function main() {
  const manifest = await (await fetch(base + "manifest.json")).json();
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(base + "model.onnx", { executionProviders: ["wasm"] });
  const result = { onnxruntime_web: ort.env.versions.web, load_ms: performance.now() - t0, golden: [] };
  let worst = 0;
  for (const c of manifest.golden) {  // the manifest's golden outputs, through onnxruntime-web
    const feeds = Object.fromEntries(Object.entries(c.inputs).map(([k, v]) => [k, decode(v)]));
    const got = await session.run(feeds);
    const diffs = {};
    for (const [name, want] of Object.entries(c.outputs)) {
      const g = plain(got[name]);
      const w = want.data.map((v) => (typeof v === "string" ? NONFINITE[v] : v));
      diffs[name] = Math.max(0, ...g.map((v, i) => Math.abs(v - w[i])));
      worst = Math.max(worst, diffs[name]);
    }
    result.golden.push({ name: c.name, max_abs_diff: diffs });
  }
  result.golden_max_abs_diff = worst;
  result.golden_passed = worst <= manifest.tolerance.atol;
  const one = Object.fromEntries(Object.entries(manifest.golden[0].inputs).map(([k, v]) => [k, decode(v)]));
  const times = [];
  for (let i = 0; i < 220; i++) {
    const s = performance.now();
    await session.run(one);
    if (i >= 20) times.push(performance.now() - s);
  }
  times.sort((a, b) => a - b);
  result.p50_ms = times[Math.floor(times.length / 2)];  // the browser rounds performance.now() (0.1 ms here)
  result.mean_ms = times.reduce((a, b) => a + b, 0) / times.length;

  async function predict(records) {
    if (!records.length) return {};
    const got = await session.run(feedsOf(manifest, records));
    return Object.fromEntries(manifest.outputs.map((o) => [o.name, plain(got[o.name])]));
  }
  const url = params.get("records");
  const box = document.getElementById("records");
  if (url) box.value = await (await fetch(url)).text();
  result.predictions = await predict(JSON.parse(box.value || "[]"));
  out.textContent = JSON.stringify(result);
  report(result);
  document.getElementById("predict").onclick = async () => {
    result.predictions = await predict(JSON.parse(box.value || "[]"));
    out.textContent = JSON.stringify(result, null, 1);
  };
}

// ?report=URL: POST the result there (examples/web/check.py reads it back)
function report(result) {
  const url = params.get("report");
  if (url) fetch(url, { method: "POST", body: JSON.stringify(result) });
}

main().catch((err) => {
  out.textContent = JSON.stringify({ error: String(err) });
  report({ error: String(err) });
});
