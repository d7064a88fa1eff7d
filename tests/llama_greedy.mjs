// Greedy continuation with the real llama.cpp (node-llama-cpp's prebuilt CPU binaries), for tests/test_export.py.
// usage: node llama_greedy.mjs MODEL.gguf [LORA.gguf|-] N 'PROMPT_IDS_JSON' ...  -> one JSON list of ids per prompt
import {getLlama} from "node-llama-cpp";

const [modelPath, loraPath, n, ...prompts] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
for (const p of prompts) {
    const context = await model.createContext({contextSize: 256, ...(loraPath !== "-" ? {lora: loraPath} : {})});
    const sequence = context.getSequence();
    const out = [];
    for await (const token of sequence.evaluate(JSON.parse(p), {temperature: 0})) {
        out.push(token);
        if (out.length >= Number(n)) break;
    }
    console.log(JSON.stringify(out));
    await context.dispose();
}
await model.dispose();
