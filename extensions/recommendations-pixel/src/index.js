import {register} from "@shopify/web-pixels-extension";
import {forwardEvents} from "./events.js";

register(forwardEvents);
