// The real llama.cpp (node-llama-cpp's prebuilt CPU binaries), for tests/test_export.py. One JSON list per line.
// greedy:   node llama_greedy.mjs MODEL.gguf LORA.gguf|- N 'PROMPT_IDS_JSON' ...   -> the next N token ids (greedy)
// tokenize: node llama_greedy.mjs MODEL.gguf tokenize 'TEXT' ...                   -> llama.cpp's token ids
// jobs:     node llama_greedy.mjs jobs JOBS.json   (a list of {model, n, prompts}) -> per job, its greedy lists
//           (several models in one process: one start of node and of llama.cpp for them all)
import {readFileSync} from "node:fs";
import {getLlama} from "node-llama-cpp";

const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});

async function greedy(model, lora, n, prompts) {
    const outs = [];
    for (const p of prompts) {
        // one thread: ggml's threads spin while they wait, and on a shared 2-core machine a tiny model's 16 tokens took
        // 18 s with the default (both cores) against 10 ms with one
        const context = await model.createContext({contextSize: 256, threads: 1, ...(lora ? {lora} : {})});
        const out = [];
        for await (const token of context.getSequence().evaluate(p, {temperature: 0})) {
            out.push(token);
            if (out.length >= n) break;
        }
        outs.push(out);
        await context.dispose();
    }
    return outs;
}

const [first, mode, ...rest] = process.argv.slice(2);
if (first === "jobs") {
    for (const job of JSON.parse(readFileSync(mode, "utf8"))) {
        const model = await llama.loadModel({modelPath: job.model});
        console.log(JSON.stringify(await greedy(model, null, job.n, job.prompts)));
        await model.dispose();
    }
} else {
    const model = await llama.loadModel({modelPath: first});
    if (mode === "tokenize") {
        for (const text of rest) console.log(JSON.stringify(Array.from(model.tokenize(text))));
    } else {
        const [n, ...prompts] = rest;
        const outs = await greedy(model, mode !== "-" ? mode : null, Number(n), prompts.map(p => JSON.parse(p)));
        for (const out of outs) console.log(JSON.stringify(out));
    }
    await model.dispose();
}
