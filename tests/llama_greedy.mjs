// The real llama.cpp (node-llama-cpp's prebuilt CPU binaries), for tests/test_export.py. One JSON list per line.
// greedy:   node llama_greedy.mjs MODEL.gguf LORA.gguf|- N 'PROMPT_IDS_JSON' ...   -> the next N token ids (greedy)
// tokenize: node llama_greedy.mjs MODEL.gguf tokenize 'TEXT' ...                   -> llama.cpp's token ids
import {getLlama} from "node-llama-cpp";

const [modelPath, mode, ...rest] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
if (mode === "tokenize") {
    for (const text of rest) console.log(JSON.stringify(Array.from(model.tokenize(text))));
} else {
    const [n, ...prompts] = rest;
    for (const p of prompts) {
        const context = await model.createContext({contextSize: 256, ...(mode !== "-" ? {lora: mode} : {})});
        const out = [];
        for await (const token of context.getSequence().evaluate(JSON.parse(p), {temperature: 0})) {
            out.push(token);
            if (out.length >= Number(n)) break;
        }
        console.log(JSON.stringify(out));
        await context.dispose();
    }
}
await model.dispose();
