// Must NOT compile: the declarations catch misuse (proves the check is real).
import { RealtimeClient } from "rtstream-client";
const client = new RealtimeClient({ wsUrl: "wss://x", token: "t", transport: "carrier-pigeon" });
client.on("transactions.new", (event) => { const s: string = event.data.amount; console.log(s); });
